//! placeholder until the BOSH module lands
