//! mosr-data
