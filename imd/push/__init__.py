"""Offline push (contract §7.5): the payload and its signature
(:mod:`imd.push.payload`), the HTTP client of the platform's gateway
(:mod:`imd.push.gateway`) and the one process that sends pending pushes
(:mod:`imd.push.drainer`).  The queue itself is imd.stores.push."""
