"""`sdkit serve`: an HTTP server for generation and training, the interface layer beside the CLI and the Python API.

    sdkit serve [--host 127.0.0.1] [--port 7860] [--models-dir DIR] [--api-auth user:pass]

Three faces on one FastAPI app, served by uvicorn:
  - A1111's API (`/sdapi/v1/...`, and sd-webui-controlnet's units and `/controlnet/...`), so existing clients work;
  - sdkit's own job API (`/sdkit/v1/jobs`): any task of the registry, progress as server-sent events;
  - a web page at `/` (plain files in `static/`): a generate form, live progress, the gallery and the queue.

Every job goes through one persistent SQLite queue (`store.py`) and is run in order by one worker thread per device
(`workers.py`), which keeps pipelines warm between jobs within a memory bound. Modules, from the bottom up:
config (the settings and their checks), catalog (models, LoRAs, ... by name), store (the queue), uploads (client
images and gallery names), runs (running one job) and workers (the threads and what routes ask of them), jobs
(sdkit recipes from clients), a1111, a1111_units, options and pnginfo (A1111's shapes), gallery, the routes
(routes_a1111, routes_sdkit), app (middleware and assembly) and main (uvicorn).
Nothing else in sdkit imports this package; torch and diffusers are imported only when a job runs.
"""
