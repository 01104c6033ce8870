"""The ``slack`` destination: a bot token from the OAuth connection, or an incoming webhook.

- :mod:`.config`: :class:`SlackConfig` (the YAML fields);
- :mod:`.blocks`: the message (Block Kit blocks and the text fallback);
- :mod:`.destination`: :class:`Slack`, sending and classifying Slack's answers;
- :mod:`.oauth`: the OAuth v2 install flow's state and code exchange (routes in
  ``ingestlayer.api.slack_oauth``).
"""

from ingestlayer.destinations.slack.config import SlackConfig
from ingestlayer.destinations.slack.destination import Slack

__all__ = ["Slack", "SlackConfig"]
