//! Retention and undo (issue 11): one test binary, a module per part.

mod versions;
