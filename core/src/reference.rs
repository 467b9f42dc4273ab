//! (reference: being written)
