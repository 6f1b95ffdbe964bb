//! afl harness for [`meetd_fuzz::rtcp`]; build and run it with `fuzz/run.sh rtcp <seconds>`.
fn main() {
    meetd_fuzz::warm_up();
    afl::fuzz!(|data: &[u8]| meetd_fuzz::rtcp(data));
}
