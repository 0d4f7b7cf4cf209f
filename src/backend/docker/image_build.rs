//! A binding's environment from its `requirements` on Docker: an image the
//! engine builds from the binding's image plus the requirements (`pip
//! install` in a `RUN`), tagged by a hash of the three and reused when it
//! is there: no registry on one host.

use futures_util::StreamExt;

use crate::backend::{BackendError, BuiltEnv, EnvRequest, LABEL_OWNER};

use super::engine::{timed, timed_or_gone};
use super::DockerBackend;

/// Where the build puts the requirements file in the image.
const REQUIREMENTS_IN_IMAGE: &str = "/tmp/binderd-requirements.txt";

impl DockerBackend {
    /// The image for `request`: found if built before, else built.
    pub(super) async fn build_image(
        &self,
        request: EnvRequest<'_>,
    ) -> Result<BuiltEnv, BackendError> {
        let Some(base) = request.binding.image.as_deref() else {
            return Err(BackendError::Start(
                "a binding with 'requirements' on Docker needs an 'image' to build on".into(),
            ));
        };
        let dockerfile = dockerfile(base, &request);
        let tag = self
            .env_tag(base, &dockerfile, request.requirements)
            .await?;
        let log = request.log;
        if timed_or_gone(
            "looking for a built environment",
            self.docker.inspect_image(&tag),
        )
        .await?
        .is_some()
        {
            log(&format!("environment {tag} (built before)"));
            return Ok(BuiltEnv::Image(tag));
        }
        let context = context(&dockerfile, request.requirements)?;
        log(&format!("building {tag} from {base}"));
        match tokio::time::timeout(request.timeout, self.build(&tag, context, &request)).await {
            Ok(Ok(())) => Ok(BuiltEnv::Image(tag)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BackendError::Start(format!(
                "building the environment took longer than {} s",
                request.timeout.as_secs()
            ))),
        }
    }

    /// The built image's tag: `binderd-env/{owner}:{hash}`, the hash of the
    /// Dockerfile, the requirements and the base image's id (a rebuilt base
    /// is a new environment).
    async fn env_tag(
        &self,
        base: &str,
        dockerfile: &str,
        requirements: &[u8],
    ) -> Result<String, BackendError> {
        let mut key = Vec::new();
        key.extend_from_slice(dockerfile.as_bytes());
        key.extend_from_slice(requirements);
        let base_id = timed("inspecting the image", self.docker.inspect_image(base))
            .await?
            .id
            .unwrap_or_default();
        key.extend_from_slice(base_id.as_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, &key);
        let hash: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(format!(
            "binderd-env/{}:{hash}",
            self.owner.get(..12).unwrap_or(&self.owner)
        ))
    }

    /// Builds `context` into `tag`, on the request's network, each line of
    /// the build's output to its log.
    async fn build(
        &self,
        tag: &str,
        context: Vec<u8>,
        request: &EnvRequest<'_>,
    ) -> Result<(), BackendError> {
        let log = request.log;
        let options = bollard::query_parameters::BuildImageOptionsBuilder::new()
            .dockerfile("Dockerfile")
            .t(tag)
            .rm(true)
            .forcerm(true)
            .networkmode(request.build_network)
            .labels(&std::collections::HashMap::from([(
                LABEL_OWNER.to_string(),
                self.owner.clone(),
            )]))
            .build();
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| BackendError::Start(format!("the build: {e}")))?;
            if let Some(text) = info.stream.as_deref() {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    log(line);
                }
            }
            if let Some(error) = info.error {
                log(&error);
                return Err(BackendError::Start(format!("the build failed: {error}")));
            }
        }
        Ok(())
    }
}

/// The Dockerfile: `base`, the requirements copied in, `pip install` run on
/// them (wheels only unless the request allows source distributions).
fn dockerfile(base: &str, request: &EnvRequest<'_>) -> String {
    let mut install: Vec<String> = vec![
        request.image_pip.to_owned(),
        "install".into(),
        "--disable-pip-version-check".into(),
        "--no-input".into(),
        "--no-cache-dir".into(),
        "--progress-bar".into(),
        "off".into(),
    ];
    if !request.allow_sdists {
        install.push("--only-binary=:all:".into());
    }
    install.extend(request.pip_args.iter().cloned());
    install.extend(["-r".into(), REQUIREMENTS_IN_IMAGE.into()]);
    format!(
        "FROM {base}\nCOPY requirements.txt {REQUIREMENTS_IN_IMAGE}\nRUN {}\n",
        serde_json::to_string(&install).unwrap_or_default()
    )
}

/// The build context: a tar of the Dockerfile and the requirements.
fn context(dockerfile: &str, requirements: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, bytes) in [
        ("Dockerfile", dockerfile.as_bytes()),
        ("requirements.txt", requirements),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, name, bytes)?;
    }
    tar.into_inner()
}
