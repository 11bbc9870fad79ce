//! Request basics every filter uses: the facts a decision reads ([`facts`]), the client address
//! ([`client_address`], trusted hops), rule matchers ([`matcher`]) and CIDR tables ([`cidr`]).

pub mod cidr;
pub mod client_address;
pub mod facts;
pub mod matcher;
