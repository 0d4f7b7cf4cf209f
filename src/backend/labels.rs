//! Every label key, annotation key and `BINDERD_*` environment variable
//! binderd stamps on the containers, pods and processes it starts, in one
//! place. Docker and Kubernetes objects carry the `binderd.*` labels; a
//! process binder carries the `BINDERD_*` variables of the same meaning
//! (what `/proc/{pid}/environ` shows); every binder's command sees the
//! `BINDERD_*` variables of [`crate::backend::plan`] too.

/// Label: the owner key of the binderd that made the object
/// ([`owner_key`](super::owner_key) of its data dir; in Kubernetes shared
/// mode, of the namespace). [`Backend::list`](super::Backend::list) lists
/// by it.
pub const LABEL_OWNER: &str = "binderd.owner";
/// Label: the name of the binding the binder is of.
pub const LABEL_BINDING: &str = "binderd.binding";
/// Label: the binder's id.
pub const LABEL_BINDER: &str = "binderd.binder";
/// Label: [`ROLE_NOTEBOOK`] for the binder's own container, [`ROLE_SERVICE`]
/// for one of its services (and the Docker network they share),
/// [`ROLE_SHARED`] for Docker's shared notebook network.
pub const LABEL_ROLE: &str = "binderd.role";
/// Label: the port the notebook serves on (read back when adopting).
pub const LABEL_PORT: &str = "binderd.port";
/// [`LABEL_ROLE`] of a binder's notebook container.
pub const ROLE_NOTEBOOK: &str = "notebook";
/// [`LABEL_ROLE`] of a binder's service container and its network.
pub const ROLE_SERVICE: &str = "service";
/// [`LABEL_ROLE`] of the Docker network every binderd's notebooks share
/// (nobody's in particular: it has no owner label).
pub const ROLE_SHARED: &str = "shared";
/// Label (Kubernetes): `none` on the pods of a binding whose egress is
/// closed (deploy/kubernetes/notebooks' NetworkPolicy then lets nothing out).
pub const LABEL_EGRESS: &str = "binderd.egress";

/// Label (Kubernetes shared mode): where a pod is in its life
/// ([`STATE_STARTING`], [`STATE_WARM`], [`STATE_ASSIGNED`]).
pub const LABEL_STATE: &str = "binderd.state";
/// [`LABEL_STATE`]: created, not yet offered.
pub const STATE_STARTING: &str = "starting";
/// [`LABEL_STATE`]: offered, any replica may claim it.
pub const STATE_WARM: &str = "warm";
/// [`LABEL_STATE`]: claimed for a reader.
pub const STATE_ASSIGNED: &str = "assigned";
/// Label (Kubernetes shared mode): the replica that made the pod.
pub const LABEL_REPLICA: &str = "binderd.replica";
/// Label (Kubernetes shared mode): the first 40 hex digits of the SHA-256
/// of a claimed pod's token (never the token).
pub const LABEL_TOKEN_HASH: &str = "binderd.token-hash";
/// Annotation of a claim: the key the pod is handed to (empty for an
/// anonymous reader).
pub const ANNOTATION_OWNER: &str = "binderd.io/owner";
/// Annotation of a claim: when, in Unix seconds.
pub const ANNOTATION_ASSIGNED_AT: &str = "binderd.io/assigned-at";
/// Annotation of a claim: the replica that made it.
pub const ANNOTATION_CLAIMED_BY: &str = "binderd.io/claimed-by";
/// Annotation of an offer: the pod's warm kernel, `{id}/{name}`.
pub const ANNOTATION_WARM_KERNEL: &str = "binderd.io/warm-kernel";

/// Environment (process binders): [`LABEL_OWNER`]'s value.
pub const ENV_OWNER: &str = "BINDERD_OWNER";
/// Environment (every binder): its binding's name.
pub const ENV_BINDING: &str = "BINDERD_BINDING";
/// Environment (every binder): its id.
pub const ENV_BINDER_ID: &str = "BINDERD_BINDER_ID";
/// Environment (every binder): the port its server is to listen on.
pub const ENV_PORT: &str = "BINDERD_PORT";
/// Environment (every binder): the path it serves under, `/user/{token}/`
/// (Kubernetes shared mode reads a pod's token back from it).
pub const ENV_BASE_URL: &str = "BINDERD_BASE_URL";
/// Environment (process binders, binderd as root): the uid it runs as.
pub const ENV_UID: &str = "BINDERD_UID";
/// What every `BINDERD_*` variable's name starts with.
pub const ENV_PREFIX: &str = "BINDERD_";
