"""The human feedback service (SPEC section 3): labelers answer the feedback forms, researchers
screen labelers, watch agreement, rate policies and export the SFT, RM and PPO datasets.

- :func:`alignloop.feedback.app.create_app`: the FastAPI application (``alignloop serve`` runs it);
- :class:`alignloop.feedback.client.FeedbackClient`: the Python client the loop uses to push
  comparison tasks and pull rankings, the same way it asks the simulated panel.
"""
