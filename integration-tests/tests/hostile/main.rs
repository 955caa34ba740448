//! Hostile members, local races and chaos (issue 10): every safety invariant under a fault matrix.

mod fsdir;
