//! Hostile members, local races and chaos (issue 10): each case's regression tests.

mod local;
