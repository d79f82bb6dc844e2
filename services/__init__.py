"""The basis registry: a FastAPI service over the trajectory and basis stores.

- app.py: `create_app(settings)`, the app factory (nothing is built at import);
- settings.py (TINYSUB_*), db.py and models.py (SQLAlchemy), deps.py (dependencies),
  errors.py (the one error -> status table), security.py (tokens, slugs, URL confinement);
- routes/ (one module per resource) and schemas.py (bodies); trajectories/ (a package: records,
  staging, parts, commit) and bases.py do what the routes ask; basis_params.py (the typed
  BasisParams of a basis order, stored as the same JSON); quotas.py caps each token's pending
  jobs;
- jobs/ (the durable job runner, a package: lease, queue, heartbeat, work, finish, pool,
  runner), recompute.py (what a recompute job does), compute.py (basis rows -> kernel calls),
  random_basis.py;
- streaming.py (ranges, ETags), middleware.py (body limits), local.py (a registry in a
  background process, for the demo, benchmarks and tests).
"""
