//! afl harness for [`meetd_fuzz::bosh_body`]; build and run it with `fuzz/run.sh bosh_body <seconds>`.
fn main() {
    meetd_fuzz::warm_up();
    afl::fuzz!(|data: &[u8]| meetd_fuzz::bosh_body(data));
}
