//! (rendezvous: being written)
