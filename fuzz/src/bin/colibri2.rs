//! afl harness for [`meetd_fuzz::colibri2`]; build and run it with `fuzz/run.sh colibri2 <seconds>`.
fn main() {
    meetd_fuzz::warm_up();
    afl::fuzz!(|data: &[u8]| meetd_fuzz::colibri2(data));
}
