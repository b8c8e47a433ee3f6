//! `kiln deploy render`: a Cloud Run service YAML (and the equivalent
//! `gcloud run deploy` command) for a kiln image on an NVIDIA L4.

mod counters;
mod render;
mod rules;
mod traces;

pub use counters::{ProxyConfigFacts, SecretRef, VpcEgress};
pub use render::{Rendered, render};
pub use rules::RuleError;

/// How kiln-proxy and Ollama share the instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One container: kiln-proxy supervises `ollama serve` and owns the GPU.
    Single,
    /// Two containers: kiln-proxy at ingress, Ollama as a GPU sidecar.
    Sidecar,
}

/// Everything the renderer needs; the CLI fills it from flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployOptions {
    pub image: String,
    /// Sidecar mode: the image kiln-proxy runs from (default: `image`).
    pub proxy_image: Option<String>,
    pub service: String,
    pub region: String,
    pub mode: Mode,
    /// `OLLAMA_NUM_PARALLEL`: requests Ollama serves at once.
    pub num_parallel: u32,
    /// Cloud Run `--concurrency`; `None` means equal to `num_parallel`.
    pub concurrency: Option<u32>,
    pub cpu: u32,
    pub memory: String,
    pub gpu_type: String,
    pub max_instances: u32,
    pub timeout_s: u32,
    pub service_account: Option<String>,
    /// Models kiln-proxy loads into VRAM before reporting ready.
    pub preload: Vec<String>,
    /// Direct VPC egress: the VPC network and subnet the instances join
    /// (Memorystore is reached over a VPC), and which traffic goes there.
    pub network: Option<String>,
    pub subnet: Option<String>,
    pub vpc_egress: VpcEgress,
    /// Shared counters: Secret Manager secrets with the Redis URL, its AUTH
    /// password and its server CA (PEM), handed to kiln-proxy as env and a file.
    pub counters_url_secret: Option<SecretRef>,
    pub counters_password_secret: Option<SecretRef>,
    pub counters_ca_secret: Option<SecretRef>,
    /// What the image's kiln-proxy config says (from `--proxy-config`).
    pub proxy_config: Option<ProxyConfigFacts>,
    /// Traces on: the secret holding the OpenTelemetry Collector's config,
    /// which then runs as a sidecar (see `traces`).
    pub trace_collector_config: Option<SecretRef>,
}

impl DeployOptions {
    /// The defaults of the Cloud Run + Gemma 3 tutorial, for one image.
    pub fn new(image: impl Into<String>) -> DeployOptions {
        DeployOptions {
            image: image.into(),
            proxy_image: None,
            service: "ollama-gemma".into(),
            region: "us-central1".into(),
            mode: Mode::Single,
            num_parallel: 4,
            concurrency: None,
            cpu: 8,
            memory: "32Gi".into(),
            gpu_type: "nvidia-l4".into(),
            max_instances: 1,
            timeout_s: 600,
            service_account: None,
            preload: Vec::new(),
            network: None,
            subnet: None,
            vpc_egress: VpcEgress::PrivateRangesOnly,
            counters_url_secret: None,
            counters_password_secret: None,
            counters_ca_secret: None,
            proxy_config: None,
            trace_collector_config: None,
        }
    }

    pub fn concurrency(&self) -> u32 {
        self.concurrency.unwrap_or(self.num_parallel)
    }
}

/// `kiln deploy …` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DeployCommand {
    /// Write a Cloud Run service YAML for a kiln image on an NVIDIA L4.
    ///
    /// The YAML goes to stdout (or --output); the equivalent `gcloud run deploy`
    /// command and any warnings go to stderr. Deploy it with
    /// `gcloud run services replace service.yaml`. The service stays private:
    /// callers need roles/run.invoker (`gcloud run services proxy` for local use).
    #[command(
        after_help = "Example:\n  kiln deploy render --image us-central1-docker.pkg.dev/my-project/kiln/ollama-gemma:4b \\\n      --preload gemma3:4b > service.yaml\n  gcloud run services replace service.yaml --region us-central1"
    )]
    Render(Box<RenderArgs>),
}

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// The image to run, as pushed by `kiln pack --push` (tag or @sha256 digest).
    #[arg(long)]
    pub image: String,
    /// Cloud Run service name.
    #[arg(long, default_value = "ollama-gemma")]
    pub service: String,
    /// Region with L4 GPUs (us-central1, us-east4, europe-west1, europe-west4, asia-southeast1).
    #[arg(long, default_value = "us-central1")]
    pub region: String,
    /// single: kiln-proxy supervises Ollama in one GPU container.
    /// sidecar: kiln-proxy at ingress, Ollama as a GPU sidecar.
    #[arg(long, value_enum, default_value = "single")]
    pub mode: Mode,
    /// OLLAMA_NUM_PARALLEL: requests Ollama serves at once (and kiln-proxy admits).
    #[arg(long, default_value_t = 4)]
    pub num_parallel: u32,
    /// Cloud Run requests per instance. Default: --num-parallel, the tutorial's rule;
    /// up to 2× is allowed (with a warning) to keep the GPU busy.
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// vCPUs per instance (L4 needs at least 4).
    #[arg(long, default_value_t = 8)]
    pub cpu: u32,
    /// Memory per instance (L4 needs at least 16Gi).
    #[arg(long, default_value = "32Gi")]
    pub memory: String,
    /// GPU type.
    #[arg(long, default_value = "nvidia-l4")]
    pub gpu_type: String,
    /// Maximum instances (each needs one GPU of your quota).
    #[arg(long, default_value_t = 1)]
    pub max_instances: u32,
    /// Request timeout in seconds (≤ 3600); long generations need a long timeout.
    #[arg(long, default_value_t = 600)]
    pub timeout: u32,
    /// Runtime service account.
    #[arg(long)]
    pub service_account: Option<String>,
    /// Models to load into VRAM before the instance reports ready (repeatable).
    #[arg(long = "preload", value_name = "MODEL")]
    pub preload: Vec<String>,
    /// Sidecar mode: image for the kiln-proxy container (default: --image).
    #[arg(long)]
    pub proxy_image: Option<String>,
    /// Write the YAML here instead of stdout.
    #[arg(long, short)]
    pub output: Option<std::path::PathBuf>,
    /// Direct VPC egress: VPC network the instances join (e.g. to reach Memorystore).
    #[arg(long)]
    pub network: Option<String>,
    /// Direct VPC egress: subnet of --network the instances take addresses from.
    #[arg(long)]
    pub subnet: Option<String>,
    /// Direct VPC egress: which traffic goes to the VPC.
    #[arg(long, value_enum, default_value = "private-ranges-only")]
    pub vpc_egress: VpcEgress,
    /// Secret Manager secret (SECRET[:VERSION], default version latest) holding the
    /// shared counters' Redis URL (rediss://IP:6378): set as KILN_COUNTERS_URL.
    #[arg(long, value_name = "SECRET[:VERSION]")]
    pub counters_url_secret: Option<SecretRef>,
    /// Secret holding the Redis AUTH password: set as KILN_COUNTERS_PASSWORD.
    #[arg(long, value_name = "SECRET[:VERSION]")]
    pub counters_password_secret: Option<SecretRef>,
    /// Secret holding the Redis server CA (PEM; Memorystore's in-transit encryption):
    /// mounted as a file named by KILN_COUNTERS_CA_FILE.
    #[arg(long, value_name = "SECRET[:VERSION]")]
    pub counters_ca_secret: Option<SecretRef>,
    /// The kiln-proxy config baked into the image (`kiln pack --proxy-config`): read
    /// to warn when plugins that count run on several instances without shared counters.
    #[arg(long, value_name = "FILE")]
    pub proxy_config: Option<std::path::PathBuf>,
    /// Traces to Cloud Trace: the secret (SECRET[:VERSION]) holding an OpenTelemetry
    /// Collector config (deploy/otel-collector.yaml is one). The Google-Built Collector
    /// then runs as a sidecar with 1 vCPU and 1Gi of the instance's, and kiln-proxy
    /// exports its spans to it (OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long, value_name = "SECRET[:VERSION]")]
    pub trace_collector_config: Option<SecretRef>,
}

impl From<&RenderArgs> for DeployOptions {
    fn from(a: &RenderArgs) -> DeployOptions {
        DeployOptions {
            image: a.image.clone(),
            proxy_image: a.proxy_image.clone(),
            service: a.service.clone(),
            region: a.region.clone(),
            mode: a.mode,
            num_parallel: a.num_parallel,
            concurrency: a.concurrency,
            cpu: a.cpu,
            memory: a.memory.clone(),
            gpu_type: a.gpu_type.clone(),
            max_instances: a.max_instances,
            timeout_s: a.timeout,
            service_account: a.service_account.clone(),
            preload: a.preload.clone(),
            network: a.network.clone(),
            subnet: a.subnet.clone(),
            vpc_egress: a.vpc_egress,
            counters_url_secret: a.counters_url_secret.clone(),
            counters_password_secret: a.counters_password_secret.clone(),
            counters_ca_secret: a.counters_ca_secret.clone(),
            proxy_config: None,
            trace_collector_config: a.trace_collector_config.clone(),
        }
    }
}

/// Runs `kiln deploy render`: YAML to stdout or a file, the rest to stderr.
/// A [`RuleError`] in the result is a usage error (the flags asked for
/// something Cloud Run refuses); anything else is a runtime failure.
pub fn run_render(args: &RenderArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut options = DeployOptions::from(args);
    if let Some(path) = &args.proxy_config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --proxy-config {}", path.display()))?;
        let facts = ProxyConfigFacts::parse(&text)
            .map_err(|e| anyhow::anyhow!("--proxy-config {}: {e}", path.display()))?;
        options.proxy_config = Some(facts);
    }
    let rendered = render(&options)?;
    for warning in &rendered.warnings {
        eprintln!("warning: {warning}");
    }
    match &args.output {
        Some(path) => std::fs::write(path, &rendered.yaml)
            .with_context(|| format!("writing {}", path.display()))?,
        None => crate::stdout::print(&rendered.yaml)?,
    }
    eprintln!(
        "# Deploy with: gcloud run services replace service.yaml --region {}",
        args.region
    );
    eprintln!("# or, equivalently:\n{}", rendered.gcloud);
    Ok(())
}
