//! afl harness for [`meetd_fuzz::jingle`]; build and run it with `fuzz/run.sh jingle <seconds>`.
fn main() {
    meetd_fuzz::warm_up();
    afl::fuzz!(|data: &[u8]| meetd_fuzz::jingle(data));
}
