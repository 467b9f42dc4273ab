//! placeholder, filled by the testkit work
