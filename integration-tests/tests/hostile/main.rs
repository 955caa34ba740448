//! Hostile members, local races and chaos (issue 10): one test binary, a
//! module per group of cases.

mod space;
