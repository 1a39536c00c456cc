//! Token verification, apart from everything else: bearer extraction, JWS checks, keys per
//! issuer, JWKS fetching and the verified-token cache, behind `Verifier::verify(token, now)`.
//! Knows nothing of Pingora, metrics or the snapshot.

pub mod bearer;
pub mod cache;
pub mod dpop;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod verifier;

pub use bearer::{bearer, credentials, BearerError, Scheme};
pub use dpop::ProofFlaw;
pub use jwt::{Binding, Issuer, Principal, MAX_TOKEN_BYTES};
pub use verifier::Verifier;

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Missing,
    Malformed(Malformed),
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// The token names a key the issuer (index) does not publish (yet).
    UnknownKey(usize),
    DisallowedAlg,
    /// The JWS `typ` is not one of the issuer's `token_types`.
    WrongType,
    /// A bound token without its proof: `cnf.jkt` with the Bearer scheme, or `cnf["x5t#S256"]`
    /// on a connection without that certificate (no downgrade).
    UnboundUse,
    /// An unbound token where a bound one is required, or with the DPoP scheme.
    UnboundToken,
    /// The DPoP proof fails a check of RFC 9449 §4.3.
    DpopProof(ProofFlaw),
    /// The DPoP proof's `jti` was seen before.
    DpopReplay,
    /// The DPoP proof lacks a nonce scopegate issued recently.
    DpopNonce,
    /// The replay store could not be asked (a 503, not a 401).
    ReplayStoreUnavailable,
}

/// What is wrong with a token that could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    Empty,
    TooLarge,
    NotAscii,
    NotCompact,
    Header,
    Payload,
    Critical,
    NoExp,
    TimeNotNumber,
    BadNumericDate,
}

impl Malformed {
    pub const ALL: [Malformed; 10] = [
        Malformed::Empty,
        Malformed::TooLarge,
        Malformed::NotAscii,
        Malformed::NotCompact,
        Malformed::Header,
        Malformed::Payload,
        Malformed::Critical,
        Malformed::NoExp,
        Malformed::TimeNotNumber,
        Malformed::BadNumericDate,
    ];

    pub fn description(self) -> &'static str {
        match self {
            Malformed::Empty => "empty bearer token",
            Malformed::TooLarge => "the token is larger than 8 KiB",
            Malformed::NotAscii => "the token is not ASCII",
            Malformed::NotCompact => "the token is not a JWS in compact form",
            Malformed::Header => "the token header is not valid",
            Malformed::Payload => "the token payload is not valid",
            Malformed::Critical => "the token has critical header extensions",
            Malformed::NoExp => "the token has no exp claim",
            Malformed::TimeNotNumber => "a time claim is not a number",
            Malformed::BadNumericDate => "a time claim is not a valid NumericDate",
        }
    }
}

/// The `reason` label of `scopegate_token_rejections_total`: one value per kind of rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionReason {
    Missing,
    Malformed,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    UnknownKey,
    DisallowedAlg,
    WrongType,
    UnboundUse,
    UnboundToken,
    InvalidDpopProof,
    DpopReplay,
    DpopNonce,
    ReplayStoreUnavailable,
}

impl RejectionReason {
    pub const ALL: [RejectionReason; 16] = [
        RejectionReason::Missing,
        RejectionReason::Malformed,
        RejectionReason::BadSignature,
        RejectionReason::Expired,
        RejectionReason::NotYetValid,
        RejectionReason::WrongIssuer,
        RejectionReason::WrongAudience,
        RejectionReason::UnknownKey,
        RejectionReason::DisallowedAlg,
        RejectionReason::WrongType,
        RejectionReason::UnboundUse,
        RejectionReason::UnboundToken,
        RejectionReason::InvalidDpopProof,
        RejectionReason::DpopReplay,
        RejectionReason::DpopNonce,
        RejectionReason::ReplayStoreUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectionReason::Missing => "missing",
            RejectionReason::Malformed => "malformed",
            RejectionReason::BadSignature => "bad_signature",
            RejectionReason::Expired => "expired",
            RejectionReason::NotYetValid => "not_yet_valid",
            RejectionReason::WrongIssuer => "wrong_issuer",
            RejectionReason::WrongAudience => "wrong_audience",
            RejectionReason::UnknownKey => "unknown_key",
            RejectionReason::DisallowedAlg => "disallowed_alg",
            RejectionReason::WrongType => "wrong_type",
            RejectionReason::UnboundUse => "unbound_use",
            RejectionReason::UnboundToken => "unbound_token",
            RejectionReason::InvalidDpopProof => "invalid_dpop_proof",
            RejectionReason::DpopReplay => "dpop_replay",
            RejectionReason::DpopNonce => "dpop_nonce",
            RejectionReason::ReplayStoreUnavailable => "replay_store_unavailable",
        }
    }

    /// Position in `ALL`, for arrays indexed by reason.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl Rejection {
    /// Every rejection a token can get (`UnknownKey` stands for any issuer), so answers to each
    /// can be built once; `slot()` is the position of a rejection in this list.
    pub fn every() -> Vec<Rejection> {
        let mut all = vec![
            Rejection::Missing,
            Rejection::BadSignature,
            Rejection::Expired,
            Rejection::NotYetValid,
            Rejection::WrongIssuer,
            Rejection::WrongAudience,
            Rejection::UnknownKey(0),
            Rejection::DisallowedAlg,
            Rejection::WrongType,
        ];
        all.extend(Malformed::ALL.map(Rejection::Malformed));
        all.extend([
            Rejection::UnboundUse,
            Rejection::UnboundToken,
            Rejection::DpopReplay,
            Rejection::DpopNonce,
            Rejection::ReplayStoreUnavailable,
        ]);
        all.extend(ProofFlaw::ALL.map(Rejection::DpopProof));
        all
    }

    pub fn slot(&self) -> usize {
        match self {
            Rejection::Missing => 0,
            Rejection::BadSignature => 1,
            Rejection::Expired => 2,
            Rejection::NotYetValid => 3,
            Rejection::WrongIssuer => 4,
            Rejection::WrongAudience => 5,
            Rejection::UnknownKey(_) => 6,
            Rejection::DisallowedAlg => 7,
            Rejection::WrongType => 8,
            Rejection::Malformed(m) => 9 + *m as usize,
            Rejection::UnboundUse => 19,
            Rejection::UnboundToken => 20,
            Rejection::DpopReplay => 21,
            Rejection::DpopNonce => 22,
            Rejection::ReplayStoreUnavailable => 23,
            Rejection::DpopProof(f) => 24 + *f as usize,
        }
    }

    pub fn reason(&self) -> RejectionReason {
        match self {
            Rejection::Missing => RejectionReason::Missing,
            Rejection::Malformed(_) => RejectionReason::Malformed,
            Rejection::BadSignature => RejectionReason::BadSignature,
            Rejection::Expired => RejectionReason::Expired,
            Rejection::NotYetValid => RejectionReason::NotYetValid,
            Rejection::WrongIssuer => RejectionReason::WrongIssuer,
            Rejection::WrongAudience => RejectionReason::WrongAudience,
            Rejection::UnknownKey(_) => RejectionReason::UnknownKey,
            Rejection::DisallowedAlg => RejectionReason::DisallowedAlg,
            Rejection::WrongType => RejectionReason::WrongType,
            Rejection::UnboundUse => RejectionReason::UnboundUse,
            Rejection::UnboundToken => RejectionReason::UnboundToken,
            Rejection::DpopProof(_) => RejectionReason::InvalidDpopProof,
            Rejection::DpopReplay => RejectionReason::DpopReplay,
            Rejection::DpopNonce => RejectionReason::DpopNonce,
            Rejection::ReplayStoreUnavailable => RejectionReason::ReplayStoreUnavailable,
        }
    }

    /// The `error_description` sent to the client: says what is wrong without echoing input.
    pub fn description(&self) -> &'static str {
        match self {
            Rejection::Missing => "no bearer token in the request",
            Rejection::Malformed(why) => why.description(),
            Rejection::BadSignature => "the token signature is invalid",
            Rejection::Expired => "the token has expired",
            Rejection::NotYetValid => "the token is not valid yet",
            Rejection::WrongIssuer => "the token issuer is not trusted",
            Rejection::WrongAudience => "the token audience is not accepted",
            Rejection::UnknownKey(_) => "the token is signed with an unknown key",
            Rejection::DisallowedAlg => "the token algorithm is not allowed",
            Rejection::WrongType => "the token type (typ) is not accepted",
            Rejection::UnboundUse => "the token is bound to a key the request does not prove",
            Rejection::UnboundToken => "this API accepts sender-constrained tokens only",
            Rejection::DpopProof(flaw) => flaw.description(),
            Rejection::DpopReplay => "the DPoP proof was used before",
            Rejection::DpopNonce => "the DPoP proof needs a nonce from this server",
            Rejection::ReplayStoreUnavailable => "the DPoP replay check is unavailable; try again",
        }
    }

    /// The JSON `error` of a 401 with this rejection (RFC 6750 §3.1, RFC 9449 §7.1 and §8).
    pub fn error_code(&self) -> &'static str {
        match self {
            // RFC 6750 §3.1: no error code when the request had no token at all.
            Rejection::Missing => "unauthorized",
            Rejection::DpopProof(_) | Rejection::DpopReplay => "invalid_dpop_proof",
            Rejection::DpopNonce => "use_dpop_nonce",
            Rejection::ReplayStoreUnavailable => "temporarily_unavailable",
            _ => "invalid_token",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_has_its_own_slot() {
        for (i, r) in Rejection::every().iter().enumerate() {
            assert_eq!(r.slot(), i, "{r:?}");
        }
    }

    #[test]
    fn reasons_are_indexed_by_their_position() {
        for (i, r) in RejectionReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{}", r.as_str());
        }
    }
}
