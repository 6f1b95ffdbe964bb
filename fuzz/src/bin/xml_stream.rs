//! afl harness for [`meetd_fuzz::xml_stream`]; build and run it with `fuzz/run.sh xml_stream <seconds>`.
fn main() {
    meetd_fuzz::warm_up();
    afl::fuzz!(|data: &[u8]| meetd_fuzz::xml_stream(data));
}
