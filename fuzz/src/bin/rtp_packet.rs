//! afl harness for [`meetd_fuzz::rtp_packet`]; build and run it with `fuzz/run.sh rtp_packet <seconds>`.
fn main() {
    meetd_fuzz::warm_up();
    afl::fuzz!(|data: &[u8]| meetd_fuzz::rtp_packet(data));
}
