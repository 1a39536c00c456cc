//! Token verification, apart from everything else: bearer extraction, JWS checks, keys per
//! issuer, JWKS fetching and the verified-token cache, behind `Verifier::verify(token, now)`.
//! Knows nothing of Pingora, metrics or the snapshot.

pub mod bearer;
pub mod cache;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod verifier;

pub use bearer::{bearer, BearerError};
pub use jwt::{Issuer, Principal, MAX_TOKEN_BYTES};
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
}

impl RejectionReason {
    pub const ALL: [RejectionReason; 10] = [
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
