//! Step 5 for sender-constrained tokens (SPEC "Sender-constrained tokens"): a verified token
//! bound to a key (`cnf`) is accepted only with the proof of that key, on every API (no
//! downgrade); an API with `proof_of_possession` refuses unbound tokens; and the DPoP
//! challenges of RFC 9449 §7.1. Pure, like the rest of the decision: the replay check of a
//! proof that passed is the caller's (`Proof::replay_key`).

use http::header::HeaderValue;
use http::HeaderMap;

use crate::auth::dpop::{self, DpopError, DpopPolicy, Expect, Proof, ProofFlaw, Target};
use crate::auth::{Principal, Rejection, Scheme};
use crate::snapshot::{quoted, Mechanism, Snapshot};

/// `DPoP`, the proof's header.
pub const DPOP: http::HeaderName = http::HeaderName::from_static("dpop");
/// `DPoP-Nonce` (RFC 9449 §8).
pub const DPOP_NONCE: http::HeaderName = http::HeaderName::from_static("dpop-nonce");
/// `DPoP-Nonce` as written on a forwarded response (see `decision::RATELIMIT_FIELD`).
pub const DPOP_NONCE_FIELD: &str = "DPoP-Nonce";

/// The request as far as binding checks read it.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    pub scheme: Scheme,
    /// The access token as sent.
    pub token: &'a [u8],
    pub headers: &'a HeaderMap,
    /// The request's method, scheme, host and normalized path (for `htm` and `htu`).
    pub target: Target<'a>,
    /// The SHA-256 thumbprint (base64url) of the client's certificate: the TLS connection's,
    /// or the `Client-Cert` a trusted proxy passed on.
    pub client_cert: Option<&'a str>,
}

/// The DPoP settings that apply to proofs on `api`: its own, else the defaults.
pub fn dpop_policy(snapshot: &Snapshot, api: Option<usize>) -> &DpopPolicy {
    api.and_then(|a| snapshot.apis[a].pop.as_ref())
        .map_or(&snapshot.dpop_default, |p| &p.dpop)
}

/// Whether a verified token may be used as it was presented on `api`: its binding proven (a
/// DPoP proof that passed every check of RFC 9449 §4.3 but replay is returned, for the caller
/// to record), and bound when the API requires it.
pub fn check_binding(
    snapshot: &Snapshot,
    api: Option<usize>,
    principal: &Principal,
    presented: &Presented<'_>,
    now: u64,
) -> Result<Option<Proof>, Rejection> {
    let binding = &principal.binding;
    // RFC 8705 §3: a certificate-bound token only on a connection with that certificate.
    if let Some(x5t) = &binding.x5t {
        if presented.client_cert != Some(&**x5t) {
            return Err(Rejection::UnboundUse);
        }
    }
    let proof = match (presented.scheme, &binding.jkt) {
        // RFC 9449 §7.2: a DPoP-bound token sent as a bearer token is a downgrade.
        (Scheme::Bearer, Some(_)) => return Err(Rejection::UnboundUse),
        (Scheme::Dpop, None) => return Err(Rejection::UnboundToken),
        (Scheme::Bearer, None) => None,
        (Scheme::Dpop, Some(jkt)) => {
            let policy = dpop_policy(snapshot, api);
            let leeway = snapshot.verifier.issuers[principal.issuer].leeway;
            let expect = Expect {
                token: presented.token,
                jkt,
                now,
                leeway,
            };
            Some(check_proof(snapshot, policy, presented, &expect)?)
        }
    };
    require_binding(snapshot, api, principal)?;
    Ok(proof)
}

/// An API whose `proof_of_possession` is `required` takes only tokens bound its way.
pub fn require_binding(
    snapshot: &Snapshot,
    api: Option<usize>,
    principal: &Principal,
) -> Result<(), Rejection> {
    let pop = api.and_then(|a| snapshot.apis[a].pop.as_ref());
    if let Some(pop) = pop.filter(|p| p.required) {
        let bound = match pop.mechanism {
            Mechanism::Dpop => principal.binding.jkt.is_some(),
            Mechanism::Mtls => principal.binding.x5t.is_some(),
        };
        if !bound {
            return Err(Rejection::UnboundToken);
        }
    }
    Ok(())
}

/// Exactly one `DPoP` header, and a proof in it that passes.
fn check_proof(
    snapshot: &Snapshot,
    policy: &DpopPolicy,
    presented: &Presented<'_>,
    expect: &Expect<'_>,
) -> Result<Proof, Rejection> {
    let mut values = presented.headers.get_all(DPOP).iter();
    let proof = match (values.next(), values.next()) {
        (Some(v), None) => v.as_bytes(),
        (None, _) => return Err(Rejection::DpopProof(ProofFlaw::Missing)),
        (Some(_), Some(_)) => return Err(Rejection::DpopProof(ProofFlaw::Multiple)),
    };
    dpop::check(proof, policy, &snapshot.nonces, &presented.target, expect).map_err(|e| match e {
        DpopError::Invalid(flaw) => Rejection::DpopProof(flaw),
        DpopError::Nonce => Rejection::DpopNonce,
    })
}

/// Which challenge a 401 carries (RFC 9449 §7.1).
#[derive(Debug, Clone, Copy)]
pub enum Challenge<'s> {
    Bearer,
    /// `DPoP algs="..."`, with the error.
    Dpop(&'s DpopPolicy),
    /// No token on an API that takes DPoP-bound and bearer tokens: both challenges.
    Both(&'s DpopPolicy),
}

/// The challenge of a 401 on `api`: DPoP when the request used the DPoP scheme, when its proof
/// or nonce was refused, or when the API requires DPoP-bound tokens; both for a request
/// without a token on an API where DPoP is optional; else Bearer.
pub fn challenge<'s>(
    snapshot: &'s Snapshot,
    api: Option<usize>,
    scheme: Option<Scheme>,
    rejection: &Rejection,
) -> Challenge<'s> {
    let pop = api.and_then(|a| snapshot.apis[a].pop.as_ref());
    let dpop_api = pop.filter(|p| p.mechanism == Mechanism::Dpop);
    let policy = dpop_policy(snapshot, api);
    let dpop_rejection = matches!(
        rejection,
        Rejection::DpopProof(_) | Rejection::DpopNonce | Rejection::DpopReplay
    );
    if scheme == Some(Scheme::Dpop) || dpop_rejection || dpop_api.is_some_and(|p| p.required) {
        Challenge::Dpop(policy)
    } else if dpop_api.is_some() && *rejection == Rejection::Missing {
        Challenge::Both(policy)
    } else {
        Challenge::Bearer
    }
}

/// `DPoP algs="...", error=..., error_description=...` (no error without a token), and the
/// RFC 9728 metadata URL when there is one.
pub fn dpop_challenge(
    policy: &DpopPolicy,
    rejection: &Rejection,
    resource_metadata: Option<&str>,
) -> String {
    let mut text = format!("DPoP algs={}", quoted(&policy.algs_text));
    if *rejection != Rejection::Missing {
        text.push_str(&format!(
            ", error=\"{}\", error_description={}",
            rejection.error_code(),
            quoted(rejection.description())
        ));
    }
    if let Some(url) = resource_metadata {
        text.push_str(", resource_metadata=");
        text.push_str(&quoted(url));
    }
    text
}

/// A `Bearer realm="..."` 403 challenge as the DPoP scheme says it (RFC 9449 §7.1: the scheme
/// the request used): `DPoP error="insufficient_scope", ...` (as SPEC writes it, and RFC 9449's
/// own example puts the error first), the realm left out and `algs` last.
pub fn as_dpop(challenge: &HeaderValue, realm: &str, policy: &DpopPolicy) -> HeaderValue {
    let bearer = format!("Bearer realm={}", quoted(realm));
    let text = challenge.to_str().unwrap_or_default();
    let rest = text.strip_prefix(&bearer).unwrap_or(text);
    let rest = rest.strip_prefix(", ").unwrap_or(rest);
    let algs = format!("algs={}", quoted(&policy.algs_text));
    let dpop = if rest.is_empty() {
        format!("DPoP {algs}")
    } else {
        format!("DPoP {rest}, {algs}")
    };
    HeaderValue::from_str(&dpop).unwrap_or_else(|_| challenge.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_403_challenge_is_said_in_the_dpop_scheme() {
        let policy = DpopPolicy::default();
        let bearer = HeaderValue::from_static(
            "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"a b\"",
        );
        assert_eq!(
            as_dpop(&bearer, "api", &policy),
            "DPoP error=\"insufficient_scope\", scope=\"a b\", algs=\"ES256 EdDSA PS256 RS256\""
        );
    }

    #[test]
    fn dpop_challenges_carry_no_realm_and_no_error_without_a_token() {
        let policy = DpopPolicy::default();
        assert_eq!(
            dpop_challenge(&policy, &Rejection::Missing, None),
            "DPoP algs=\"ES256 EdDSA PS256 RS256\""
        );
        let with = dpop_challenge(&policy, &Rejection::DpopNonce, Some("https://h/m"));
        assert!(with.starts_with("DPoP algs=\"ES256 EdDSA PS256 RS256\", error=\"use_dpop_nonce\", error_description="), "{with}");
        assert!(
            with.ends_with(", resource_metadata=\"https://h/m\""),
            "{with}"
        );
    }
}
