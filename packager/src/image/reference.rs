//! Image references as Docker spells them: `ollama/ollama`, `ollama/ollama:0.6`,
//! `REGION-docker.pkg.dev/P/R/img:tag`, `127.0.0.1:5000/x/y@sha256:…`.
//! Pure parsing, with a table of accepted and rejected inputs as tests.

use std::fmt;

/// Docker Hub's canonical name, and the host its API actually lives on.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The longest `registry/repository` a registry accepts.
const NAME_MAX: usize = 255;

#[derive(Debug, thiserror::Error)]
#[error(
    "invalid image reference {input:?}: {reason}; expected [HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST]"
)]
pub struct ReferenceError {
    input: String,
    reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `docker.io`, `127.0.0.1:5000`, `europe-west1-docker.pkg.dev`.
    pub registry: String,
    /// `ollama/ollama`, `library/ubuntu`, `p/r/img`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn parse(input: &str) -> Result<ImageRef, ReferenceError> {
        let err = |reason| ReferenceError {
            input: input.to_string(),
            reason,
        };
        if input.is_empty() || input.len() > 4096 {
            return Err(err("empty or too long"));
        }
        if input.contains("://") {
            return Err(err("a reference has no URL scheme"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                super::validate_digest(digest)
                    .map_err(|_| err("the digest must be sha256:<64 hex digits>"))?;
                (rest, Some(digest.to_string()))
            }
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before
        // that belongs to a registry port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                && !tag.starts_with(['.', '-']);
            if !ok {
                return Err(err("a tag is 1-128 letters, digits, '_', '.' or '-'"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
        };
        if !repository.split('/').all(component_ok) {
            return Err(err(
                "repository path components are lowercase letters, digits and . _ -",
            ));
        }
        let host_ok = registry
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
        if !host_ok {
            return Err(err("bad registry host"));
        }
        // Docker's limit (distribution's NameTotalLengthMax), on the name as
        // printed: `x` is `docker.io/library/x`, which must parse back too.
        if registry.len() + 1 + repository.len() > NAME_MAX {
            return Err(err(
                "the name (registry/repository) is longer than 255 characters",
            ));
        }
        Ok(ImageRef {
            registry,
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// The tag or digest to ask the registry for (`latest` when neither is given).
    pub fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The host serving the registry API (Docker Hub's API is not on docker.io).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The same image with a digest instead of a tag, for printing `REF@sha256:…`.
    pub fn with_digest(&self, digest: &str) -> ImageRef {
        ImageRef {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// Name without tag or digest: `127.0.0.1:5000/kiln/gemma`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Whether a registry host (`host[:port]`) is reached over plain HTTP:
/// loopback always, others only when named by `--insecure-registry`
/// (compared without case, with or without the port). Pulls, pushes and
/// reads of base images all decide it here.
pub fn is_plain_http(host: &str, insecure: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    is_loopback(name)
        || insecure
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(name))
}

/// `localhost`, `*.localhost`, 127.0.0.0/8 or ::1 (a host name without port).
pub fn is_loopback(name: &str) -> bool {
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_references() {
        let table = [
            ("ollama/ollama", "docker.io", "ollama/ollama", None, None),
            (
                "ollama/ollama:latest",
                "docker.io",
                "ollama/ollama",
                Some("latest"),
                None,
            ),
            ("ubuntu", "docker.io", "library/ubuntu", None, None),
            (
                "index.docker.io/library/ubuntu:24.04",
                "docker.io",
                "library/ubuntu",
                Some("24.04"),
                None,
            ),
            (
                "127.0.0.1:5000/kiln/gemma:4b",
                "127.0.0.1:5000",
                "kiln/gemma",
                Some("4b"),
                None,
            ),
            ("localhost/x", "localhost", "x", None, None),
            (
                "europe-west1-docker.pkg.dev/p/r/ollama-gemma:4b",
                "europe-west1-docker.pkg.dev",
                "p/r/ollama-gemma",
                Some("4b"),
                None,
            ),
        ];
        for (input, registry, repo, tag, digest) in table {
            let r = ImageRef::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (
                    r.registry.as_str(),
                    r.repository.as_str(),
                    r.tag.as_deref(),
                    r.digest.as_deref()
                ),
                (registry, repo, tag, digest),
                "{input}"
            );
        }
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("127.0.0.1:5000/x/y:t@{d}")).unwrap();
        assert_eq!(r.reference(), d);
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(
            ImageRef::parse("ollama/ollama").unwrap().api_host(),
            "registry-1.docker.io"
        );
    }

    #[test]
    fn rejected_references() {
        for input in [
            "",
            "https://example.com/x",
            "Ollama/Ollama",
            "x/y:",
            "x/y:bad tag",
            "x/y@sha256:123",
            "x//y",
            "host.example/../etc",
            "x/y:-tag",
            // Found by the image_ref fuzz target: 4,000 characters passed the
            // input's limit, then failed to parse as `docker.io/library/…`.
            &"a".repeat(4000),
            &format!("registry.example/{}", "a".repeat(239)),
        ] {
            assert!(
                ImageRef::parse(input).is_err(),
                "{input:?} should be rejected"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        let longest = format!("registry.example/{}", "a".repeat(238));
        for input in [
            "docker.io/ollama/ollama:latest",
            "127.0.0.1:5000/a/b:c",
            &longest,
        ] {
            assert_eq!(ImageRef::parse(input).unwrap().to_string(), input);
        }
    }

    #[test]
    fn plain_http_only_for_loopback_and_named_hosts() {
        assert!(is_plain_http("127.0.0.1:5000", &[]));
        assert!(is_plain_http("localhost:5000", &[]));
        assert!(is_plain_http("[::1]:5000", &[]));
        assert!(!is_plain_http("registry.example:5000", &[]));
        assert!(is_plain_http(
            "registry.example:5000",
            &["registry.example:5000".into()]
        ));
        assert!(!is_plain_http("docker.io", &[]));
    }

    #[test]
    fn plain_http_only_for_loopback_and_named_insecure_hosts() {
        let insecure = vec!["mirror.internal:5000".to_string()];
        for host in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost",
            "localhost:8080",
            "mirror.internal:5000",
        ] {
            assert!(is_plain_http(host, &insecure), "{host}");
        }
        for host in [
            "registry.ollama.ai",
            "mirror.internal:5001",
            "128.0.0.1",
            "localhost.evil.com",
            "10.0.0.1:5000",
        ] {
            assert!(!is_plain_http(host, &insecure), "{host}");
        }
    }
}
