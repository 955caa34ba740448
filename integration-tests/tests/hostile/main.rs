//! Hostile fleet members, local races and chaos (issue 10): one test binary, a module per area.

mod wire;
