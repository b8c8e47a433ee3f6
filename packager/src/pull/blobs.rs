//! One blob into the cache, whichever way is cheapest: already cached,
//! imported from a local Ollama store, or downloaded. Each blob is fetched
//! under its cache lock, so concurrent pulls of the same blob take turns and
//! the second one finds the first one's verified file.

use super::download::{BlobJob, download};
use super::manifest::Descriptor;
use super::ollama_registry::OllamaRegistry;
use super::{BlobRef, PullError, PullOptions, local};
use crate::blob_cache::Cache;
use crate::layers::TarFraming;
use crate::model_ref::ModelRef;
use crate::progress::Progress;

pub(crate) struct BlobFetcher<'a> {
    pub cache: &'a Cache,
    pub options: &'a PullOptions,
    pub progress: &'a Progress,
}

impl BlobFetcher<'_> {
    pub async fn fetch(
        &self,
        client: &OllamaRegistry,
        model: &ModelRef,
        blob: &Descriptor,
        layer: Option<&TarFraming>,
    ) -> Result<BlobRef, PullError> {
        let found = |path| BlobRef {
            digest: blob.digest.clone(),
            media_type: blob.media_type.clone(),
            size: blob.size,
            path,
        };
        if let Some(path) = self.cache.lookup(&blob.digest, blob.size)? {
            return Ok(found(path));
        }
        let _lock = match self.cache.try_lock_blob(&blob.digest)? {
            Some(lock) => lock,
            None => {
                self.progress.println(&format!(
                    "waiting for another kiln run that is downloading {}",
                    blob.digest
                ));
                self.cache.lock_blob(&blob.digest).await?
            }
        };
        // Another run may have finished it while we waited for the lock.
        if let Some(path) = self.cache.lookup(&blob.digest, blob.size)? {
            return Ok(found(path));
        }
        if let Some(dir) = &self.options.from_ollama_dir
            && let Some(path) = local::import_blob(dir, self.cache, &blob.digest, blob.size, layer)?
        {
            self.progress
                .println(&format!("imported {} from {}", blob.digest, dir.display()));
            return Ok(found(path));
        }
        let job = BlobJob {
            client,
            cache: self.cache,
            options: self.options,
            repository: &model.repository(),
            digest: &blob.digest,
            size: blob.size,
            layer,
        };
        let path = download(&job, |already| {
            self.progress.blob(&blob.digest, blob.size, already)
        })
        .await?;
        Ok(found(path))
    }
}
