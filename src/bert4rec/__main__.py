from bert4rec.cli import main

raise SystemExit(main())
