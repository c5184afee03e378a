//! Who holds what: the redb-backed index of peers' advertised store paths. (STUB)
