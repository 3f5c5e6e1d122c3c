//! Voting directory authorities (n = 3f+1, at most f Byzantine): each runs the directory's
//! registry (`crate::directory`) and, every epoch, signs a vote ([`vote`]), exchanges votes
//! and signatures with its pinned peers ([`exchange`]), and computes the consensus as a pure
//! function of the votes ([`consensus`]); [`round`] is one epoch's state. A document counts
//! with 2f+1 signatures (`topology::verify_consensus`).

pub mod consensus;
pub mod exchange;
pub mod round;
pub mod vote;
