//! afl harness for [`meetd_fuzz::sasl`]; build and run it with `fuzz/run.sh sasl <seconds>`.
fn main() {
    meetd_fuzz::warm_up();
    afl::fuzz!(|data: &[u8]| meetd_fuzz::sasl(data));
}
