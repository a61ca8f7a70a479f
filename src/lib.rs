//! Ember
