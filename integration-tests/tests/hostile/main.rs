//! Hostile fleet members and hostile local users (issue 10): one test
//! binary, a module per group of cases. A scripted member
//! (`fleetsync_integration_tests::member`) holds the secret and sends what
//! no honest node would; a local user swaps files and symlinks under the
//! node. The node must reject, count and log, stay up and keep syncing.

mod fsdir;
mod growth;
mod local;
mod space;
mod wire;
