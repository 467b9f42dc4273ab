//! (units: being written)
