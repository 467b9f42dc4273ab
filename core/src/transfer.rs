//! (transfer: being written)
