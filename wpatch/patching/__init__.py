"""The patching engine: a batch's rows planned (`plan`), encoder outputs with every encoder patch (`encoder`),
decodings with every decoder patch (`decoder`, over `decoding`), the measures of each row (`measures`), the
LightningModule that runs them in a predict step (`module`), and the batch size that fits a GPU (`autobatch`)."""
