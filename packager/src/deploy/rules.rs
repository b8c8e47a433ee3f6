//! Cloud Run rules a GPU service must follow, checked before anything is
//! rendered, so a bad setting fails here with a fix instead of at deploy time.

use thiserror::Error;

use super::{DeployOptions, Mode};

/// Cloud Run's minimum for an instance with an NVIDIA L4 (4 vCPU, 16 GiB).
const L4_MIN_CPU: u32 = 4;
const L4_MIN_MEMORY_GIB: u32 = 16;
/// Cloud Run's request timeout ceiling.
const MAX_TIMEOUT_S: u32 = 3600;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RuleError {
    #[error(
        "--concurrency {concurrency} is more than twice --num-parallel {num_parallel}: requests would queue \
         inside Ollama, where the autoscaler cannot see them; use at most {max} (2 × OLLAMA_NUM_PARALLEL)"
    )]
    ConcurrencyTooHigh {
        concurrency: u32,
        num_parallel: u32,
        max: u32,
    },
    #[error("--{flag} must be at least 1")]
    Zero { flag: &'static str },
    #[error(
        "--cpu {0} is below the {L4_MIN_CPU} vCPU Cloud Run requires with an NVIDIA L4; use --cpu 8 (the default)"
    )]
    TooFewCpus(u32),
    #[error("--memory {0} is not a size in Gi (e.g. 32Gi)")]
    BadMemory(String),
    #[error(
        "--memory {0} is below the {L4_MIN_MEMORY_GIB}Gi Cloud Run requires with an NVIDIA L4; use --memory 32Gi (the default)"
    )]
    TooLittleMemory(String),
    #[error("--timeout {0} exceeds Cloud Run's maximum of {MAX_TIMEOUT_S} seconds")]
    TimeoutTooLong(u32),
    #[error(
        "service name {0:?} is not valid on Cloud Run: use lowercase letters, digits and hyphens, \
         starting with a letter, at most 49 characters (e.g. ollama-gemma)"
    )]
    BadServiceName(String),
    #[error(
        "--image {0:?} is empty or has spaces; give an image reference such as REGION-docker.pkg.dev/PROJECT/REPO/ollama-gemma:4b"
    )]
    BadImage(String),
}

/// Checks the options and returns warnings for settings that deploy but are
/// probably not what the user wants.
pub fn check(options: &DeployOptions) -> Result<Vec<String>, RuleError> {
    let mut warnings = Vec::new();
    check_service_name(&options.service)?;
    for image in [Some(&options.image), options.proxy_image.as_ref()]
        .into_iter()
        .flatten()
    {
        if image.is_empty() || image.contains(char::is_whitespace) {
            return Err(RuleError::BadImage(image.clone()));
        }
        if !image_is_deployable(image) {
            warnings.push(format!(
                "{image} is neither in Artifact Registry (*-docker.pkg.dev) nor on Docker Hub; \
                 Cloud Run deploys only from those (use an Artifact Registry remote repository for other registries)"
            ));
        }
    }
    for (flag, value) in [
        ("num-parallel", options.num_parallel),
        ("concurrency", options.concurrency()),
        ("max-instances", options.max_instances),
        ("timeout", options.timeout_s),
    ] {
        if value == 0 {
            return Err(RuleError::Zero { flag });
        }
    }
    let (concurrency, num_parallel) = (options.concurrency(), options.num_parallel);
    if concurrency > 2 * num_parallel {
        return Err(RuleError::ConcurrencyTooHigh {
            concurrency,
            num_parallel,
            max: 2 * num_parallel,
        });
    }
    if concurrency > num_parallel {
        warnings.push(format!(
            "--concurrency {concurrency} is above --num-parallel {num_parallel}: up to {} requests per instance \
             will wait in kiln-proxy's queue; this raises GPU use but also latency",
            concurrency - num_parallel
        ));
    }
    if options.cpu < L4_MIN_CPU {
        return Err(RuleError::TooFewCpus(options.cpu));
    }
    let memory_gib =
        parse_gib(&options.memory).ok_or_else(|| RuleError::BadMemory(options.memory.clone()))?;
    if memory_gib < L4_MIN_MEMORY_GIB {
        return Err(RuleError::TooLittleMemory(options.memory.clone()));
    }
    if options.timeout_s > MAX_TIMEOUT_S {
        return Err(RuleError::TimeoutTooLong(options.timeout_s));
    }
    if options.max_instances == 1 {
        warnings.push(
            "--max-instances 1 means downtime while Cloud Run migrates the instance; 3 is safer if your GPU quota allows"
                .into(),
        );
    }
    if options.mode == Mode::Sidecar && options.proxy_image.is_none() {
        warnings.push(
            "sidecar mode without --proxy-image runs kiln-proxy from the model image; fine for images made by \
             `kiln pack --proxy-bin`, but a proxy change then means a new model image"
                .into(),
        );
    }
    Ok(warnings)
}

fn check_service_name(name: &str) -> Result<(), RuleError> {
    let valid = (1..=49).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(RuleError::BadServiceName(name.to_string()))
    }
}

fn image_is_deployable(image: &str) -> bool {
    let first = image.split('/').next().unwrap_or_default();
    let has_registry_host = image.contains('/') && (first.contains('.') || first.contains(':'));
    !has_registry_host
        || first.ends_with("-docker.pkg.dev")
        || first == "docker.io"
        || first.ends_with(".docker.io")
}

/// `32Gi` → 32. Cloud Run also accepts `G`/`M`/`Mi`, but GPU services are sized in Gi.
fn parse_gib(memory: &str) -> Option<u32> {
    memory.strip_suffix("Gi")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> DeployOptions {
        DeployOptions::new("us-central1-docker.pkg.dev/p/r/ollama-gemma:4b")
    }

    #[test]
    fn concurrency_defaults_to_num_parallel_without_warning() {
        let warnings = check(&DeployOptions {
            max_instances: 3,
            ..options()
        })
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn concurrency_above_num_parallel_warns_and_above_twice_is_refused() {
        let warn = check(&DeployOptions {
            concurrency: Some(6),
            max_instances: 3,
            ..options()
        })
        .unwrap();
        assert_eq!(warn.len(), 1);
        assert!(warn[0].contains("--concurrency 6 is above --num-parallel 4"));
        assert!(
            check(&DeployOptions {
                concurrency: Some(8),
                ..options()
            })
            .is_ok()
        );
        assert_eq!(
            check(&DeployOptions {
                concurrency: Some(9),
                ..options()
            }),
            Err(RuleError::ConcurrencyTooHigh {
                concurrency: 9,
                num_parallel: 4,
                max: 8
            })
        );
    }

    #[test]
    fn l4_minimums_are_enforced() {
        assert_eq!(
            check(&DeployOptions {
                cpu: 2,
                ..options()
            }),
            Err(RuleError::TooFewCpus(2))
        );
        assert_eq!(
            check(&DeployOptions {
                memory: "8Gi".into(),
                ..options()
            }),
            Err(RuleError::TooLittleMemory("8Gi".into()))
        );
        assert_eq!(
            check(&DeployOptions {
                memory: "lots".into(),
                ..options()
            }),
            Err(RuleError::BadMemory("lots".into()))
        );
    }

    #[test]
    fn service_names_follow_cloud_run_rules() {
        for good in ["ollama-gemma", "a", "svc-2"] {
            assert!(check_service_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Ollama",
            "2svc",
            "svc-",
            "svc_1",
            &"a".repeat(50),
            "svc/../x",
        ] {
            assert!(check_service_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn images_outside_artifact_registry_and_docker_hub_warn() {
        let warnings = check(&DeployOptions {
            image: "ghcr.io/me/ollama:1".into(),
            max_instances: 3,
            ..options()
        })
        .unwrap();
        assert!(
            warnings.iter().any(|w| w.contains("ghcr.io/me/ollama:1")),
            "{warnings:?}"
        );
        for ok in [
            "ollama/ollama:latest",
            "docker.io/ollama/ollama",
            "europe-west4-docker.pkg.dev/p/r/i@sha256:ab",
        ] {
            assert!(image_is_deployable(ok), "{ok}");
        }
    }

    #[test]
    fn zero_and_oversized_values_are_refused() {
        assert_eq!(
            check(&DeployOptions {
                num_parallel: 0,
                ..options()
            }),
            Err(RuleError::Zero {
                flag: "num-parallel"
            })
        );
        assert_eq!(
            check(&DeployOptions {
                timeout_s: 4000,
                ..options()
            }),
            Err(RuleError::TimeoutTooLong(4000))
        );
    }
}
