#![no_std]
// Library target so the crate can be a build-dependency of monitor-user (cache invalidation).
