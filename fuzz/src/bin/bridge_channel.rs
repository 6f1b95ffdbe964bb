//! afl harness for [`meetd_fuzz::bridge_channel`]; build and run it with `fuzz/run.sh bridge_channel <seconds>`.
fn main() {
    meetd_fuzz::warm_up();
    afl::fuzz!(|data: &[u8]| meetd_fuzz::bridge_channel(data));
}
