"""The basis registry: a FastAPI service over the trajectory and basis stores.

    app.py        create_app(settings): the app factory (nothing is built at import)
    settings.py   TINYSUB_* settings          db.py, models.py   SQLAlchemy engine and tables
    deps.py       Annotated dependencies      errors.py          one error -> status table
    security.py   tokens, slugs, URL confinement
    routes/       one module per resource     schemas.py         request / response bodies
    trajectories.py, bases.py, recompute.py   what the routes do
    jobs.py       the durable job runner      compute.py         basis rows -> kernel calls
    random_basis.py  the seeded random baseline
    streaming.py  byte ranges and ETags       middleware.py      request body limits
    local.py      a registry in a background process (demo, benchmarks, tests)
"""
