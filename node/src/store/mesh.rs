//! The `mesh_records` tree, handed to the mesh.

use super::{Store, StoreError};

impl Store {
    /// The tree the mesh keeps its DHT records in (handed to the dht crate's
    /// persistent record store, which owns its contents).
    pub fn mesh_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree("mesh_records")?)
    }
}
