//! afl harness for [`meetd_fuzz::stun`]; build and run it with `fuzz/run.sh stun <seconds>`.
fn main() {
    meetd_fuzz::warm_up();
    afl::fuzz!(|data: &[u8]| meetd_fuzz::stun(data));
}
