"""The shipped recipes (installed as ``campaign.recipes``): ``hpo.yaml`` is the main job."""
