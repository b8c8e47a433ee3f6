//! A small blocking client for seeding and reading the test registry.
//!
//! Blocking on purpose: seeding happens in test setup, and a blocking client
//! is safe to call from both plain and `#[tokio::test]` tests.

use std::io::Read;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::registry::TestRegistry;

pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// `sha256:<hex>` of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl TestRegistry {
    fn with_auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match self.authorization() {
            Some(value) => req.header("Authorization", value),
            None => req,
        }
    }

    /// Uploads a blob monolithically (POST then PUT with the whole body).
    pub fn push_blob(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        body: &mut dyn Read,
    ) -> Result<()> {
        let agent = agent();
        let resp = self
            .with_auth(agent.post(format!("{}/v2/{repo}/blobs/uploads/", self.url())))
            .send_empty()?;
        if resp.status().as_u16() != 202 {
            bail!("starting upload to {repo}: HTTP {}", resp.status());
        }
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .context("upload start without Location")?;
        let location = if location.starts_with('/') {
            format!("{}{location}", self.url())
        } else {
            location.to_string()
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let resp = self
            .with_auth(agent.put(format!("{location}{sep}digest={digest}")))
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", size.to_string())
            .send(ureq::SendBody::from_reader(body))?;
        if resp.status().as_u16() != 201 {
            bail!(
                "finishing upload of {digest} to {repo}: HTTP {}",
                resp.status()
            );
        }
        Ok(())
    }

    /// Uploads a small blob held in memory and returns its digest.
    pub fn push_bytes(&self, repo: &str, bytes: &[u8]) -> Result<String> {
        let digest = digest_of(bytes);
        self.push_blob(repo, &digest, bytes.len() as u64, &mut &bytes[..])?;
        Ok(digest)
    }

    /// Puts a manifest under a tag (or digest) and returns its digest.
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String> {
        let resp = self
            .with_auth(agent().put(format!("{}/v2/{repo}/manifests/{reference}", self.url())))
            .header("Content-Type", media_type)
            .send(bytes)?;
        if resp.status().as_u16() != 201 {
            let status = resp.status();
            let body = resp.into_body().read_to_string().unwrap_or_default();
            bail!("putting manifest {repo}:{reference}: HTTP {status}: {body}");
        }
        Ok(digest_of(bytes))
    }

    /// Fetches a manifest's exact bytes and media type.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Result<(String, Vec<u8>)> {
        let resp = self
            .with_auth(agent().get(format!("{}/v2/{repo}/manifests/{reference}", self.url())))
            .header(
                "Accept",
                "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                 application/vnd.docker.distribution.manifest.list.v2+json, \
                 application/vnd.docker.distribution.manifest.v2+json",
            )
            .call()?;
        if resp.status().as_u16() != 200 {
            bail!(
                "getting manifest {repo}:{reference}: HTTP {}",
                resp.status()
            );
        }
        let media_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = resp
            .into_body()
            .with_config()
            .limit(16 << 20)
            .read_to_vec()?;
        Ok((media_type, bytes))
    }

    /// Fetches a (small) blob whole.
    pub fn get_blob(&self, repo: &str, digest: &str) -> Result<Vec<u8>> {
        let resp = self
            .with_auth(agent().get(format!("{}/v2/{repo}/blobs/{digest}", self.url())))
            .call()?;
        if resp.status().as_u16() != 200 {
            bail!("getting blob {digest} from {repo}: HTTP {}", resp.status());
        }
        Ok(resp
            .into_body()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()?)
    }

    /// Whether the repository has this blob.
    pub fn has_blob(&self, repo: &str, digest: &str) -> Result<bool> {
        let resp = self
            .with_auth(agent().head(format!("{}/v2/{repo}/blobs/{digest}", self.url())))
            .call()?;
        Ok(resp.status().as_u16() == 200)
    }
}
