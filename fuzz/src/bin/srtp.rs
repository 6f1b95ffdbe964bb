//! afl harness for [`meetd_fuzz::srtp`]; build and run it with `fuzz/run.sh srtp <seconds>`.
fn main() {
    meetd_fuzz::warm_up();
    afl::fuzz!(|data: &[u8]| meetd_fuzz::srtp(data));
}
