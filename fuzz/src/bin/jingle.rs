//! afl harness for [`meetd_fuzz::jingle`]; build and run it with `fuzz/run.sh jingle <seconds>`.
fn main() {
    afl::fuzz!(|data: &[u8]| meetd_fuzz::jingle(data));
}
