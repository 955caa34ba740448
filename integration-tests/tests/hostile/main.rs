//! Hostile fleet members (issue 10): a scripted member that holds the secret
//! sends what no honest node would; the node stays up and safe.

mod growth;
