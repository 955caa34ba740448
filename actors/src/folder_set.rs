//! The node's folders as one set a reload can change: [`FolderSet`].
//!
//! Everything that works across folders (the supervisor, the distributor
//! serving index streams, retention, status, the admin API) holds the set
//! and reads a [`FolderSet::snapshot`] per use, never a copy kept from
//! start-up, so a folder added by a reload is seen at the next use and a
//! removed one is not served again. Writers are rare (a reload), readers
//! constant: the map is swapped whole (`arc-swap`), readers never lock.

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;

use crate::folder::Folder;

/// Folders by id.
pub type FolderMap = HashMap<String, Arc<Folder>>;

#[derive(Default)]
pub struct FolderSet(ArcSwap<FolderMap>);

impl std::fmt::Debug for FolderSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ids()).finish()
    }
}

impl FolderSet {
    pub fn new(map: FolderMap) -> Arc<FolderSet> {
        Arc::new(FolderSet(ArcSwap::from_pointee(map)))
    }

    /// The folders now; a reload may change the set after.
    pub fn snapshot(&self) -> Arc<FolderMap> {
        self.0.load_full()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Folder>> {
        self.0.load().get(id).cloned()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.0.load().contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.0.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.load().is_empty()
    }

    /// Folder ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.0.load().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Add (or replace) a folder.
    pub(crate) fn insert(&self, folder: Arc<Folder>) {
        self.0.rcu(|m| {
            let mut m = FolderMap::clone(m);
            m.insert(folder.id().to_string(), folder.clone());
            m
        });
    }

    /// Take a folder out of the set; it is returned if it was there.
    pub(crate) fn remove(&self, id: &str) -> Option<Arc<Folder>> {
        let old = self.get(id)?;
        self.0.rcu(|m| {
            let mut m = FolderMap::clone(m);
            m.remove(id);
            m
        });
        Some(old)
    }
}
