//! A single-file layer's tar, split around the file: `kiln pull` hashes the
//! header, the blob as it streams in, and the padding, and so knows the
//! layer's digest before `kiln pack` ever asks for it.

use sha2::{Digest as _, Sha256};

use super::{Compression, LayerCache, LayerError, LayerSpec, layer_key, tar_stream};

/// The tar bytes around the one file of a single-file layer, so the layer's
/// digest can be computed by whoever streams the file's bytes anyway (the
/// pull), and recorded in the digest cache as if [`Layer::build`] had hashed it.
#[derive(Clone, Debug)]
pub struct TarFraming {
    /// Directory entries and the file's header.
    pub prefix: Vec<u8>,
    /// The file's padding and the end-of-archive blocks.
    pub suffix: Vec<u8>,
    key: String,
    tar_size: u64,
}

impl TarFraming {
    /// The framing of an uncompressed layer holding exactly one file; `None`
    /// for any other layer.
    pub fn of(spec: &LayerSpec) -> Result<Option<TarFraming>, LayerError> {
        let segments = tar_stream::plan(spec)?;
        let files = segments
            .iter()
            .filter(|s| matches!(s, tar_stream::Segment::File { .. }))
            .count();
        if files != 1 || spec.file_count() != 1 {
            return Ok(None);
        }
        let (mut prefix, mut suffix, mut after) = (Vec::new(), Vec::new(), false);
        for segment in &segments {
            let out = if after { &mut suffix } else { &mut prefix };
            match segment {
                tar_stream::Segment::Bytes(b) => out.extend_from_slice(b),
                tar_stream::Segment::Zeros(n) => out.resize(out.len() + *n as usize, 0),
                tar_stream::Segment::File { .. } => after = true,
            }
        }
        Ok(Some(TarFraming {
            prefix,
            suffix,
            key: layer_key(spec, Compression::None),
            tar_size: segments.iter().map(|s| s.len()).sum(),
        }))
    }

    /// Records the layer's digest, given a hasher that has seen the prefix
    /// and the file's bytes.
    pub fn finish(&self, mut hasher: Sha256, cache: &LayerCache) -> String {
        hasher.update(&self.suffix);
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        cache.put(&self.key, &digest, self.tar_size, &digest);
        digest
    }
}
