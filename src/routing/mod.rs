//! From a request target to a route: path normalization, the router (host + method + path), and
//! what a route requires of a token.

pub mod claims;
pub mod hosts;
pub mod path;
pub mod router;
pub mod scopes;

pub use claims::{ClaimCondition, Expected};
pub use hosts::{normalize_host, HostPattern, HostTable};
pub use path::{normalize, PathError};
pub use router::{Lookup, Router, RouterError};
pub use scopes::{is_scope_token, RequiredScopes, ScopeSet};
