//! (picker: being written)
