//! (bitfield: being written)
